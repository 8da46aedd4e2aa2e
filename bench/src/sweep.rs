//! A sweep: command-line flags or a TOML file -> the list of cases, all checked before
//! anything runs or is written.

use std::collections::HashSet;
use std::path::Path;

use itertools::iproduct;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use xarena_reports::schema::{CaseKey, Claims, Dtype, Mode, Scope};
use xarena_variants::{find, Shape, VariantError, VariantSpec};

use crate::roofline::RooflineMode;
use xarena_measure::device::{check_threads, normalise_device};
use xarena_measure::timing::TimingConfig;

#[derive(Debug, Error)]
pub enum SweepError {
    #[error("sweep file {path}: {message}")]
    File { path: String, message: String },
    #[error("`{field}`: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Variant(#[from] xarena_variants::VariantError),
    // The source is in the message, so it is not also a `#[source]` that anyhow's chain
    // would print a second time.
    #[error("{case}: {error}")]
    Case {
        case: String,
        error: xarena_variants::VariantError,
    },
    #[error(transparent)]
    Device(#[from] xarena_measure::device::DeviceError),
}

fn field(field: &'static str, message: impl Into<String>) -> SweepError {
    SweepError::Field {
        field,
        message: message.into(),
    }
}

/// A sweep file. Every field is optional; flags given on the command line win.
///
/// ```toml
/// variants = ["vanilla", "local:window=64", { name = "performer", features = 128 }]
/// seq = [512, 1024]
/// batch = [1]
/// dtype = ["f32", "bf16"]
/// mode = ["forward", "train"]
/// roofline = "on"
/// [timing]
/// min_time_s = 0.5
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub variants: Option<Vec<toml::Value>>,
    pub seq: Option<Vec<i64>>,
    pub batch: Option<Vec<i64>>,
    pub heads: Option<Vec<i64>>,
    pub head_dim: Option<Vec<i64>>,
    pub dtype: Option<Vec<Dtype>>,
    pub device: Option<Vec<String>>,
    pub mode: Option<Vec<Mode>>,
    pub scope: Option<Vec<Scope>>,
    pub causal: Option<Vec<bool>>,
    pub timing: Option<TimingFile>,
    pub timeout_s: Option<f64>,
    pub threads: Option<i64>,
    /// `auto`, `on` or `off`, as `--roofline`.
    pub roofline: Option<RooflineMode>,
    /// Run cases whose estimated memory exceeds their device's, as `--allow-oversize`.
    pub allow_oversize: Option<bool>,
    /// Visits per case, as `--rounds`.
    pub rounds: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingFile {
    pub warmup_s: Option<f64>,
    pub warmup_iters: Option<u64>,
    pub min_time_s: Option<f64>,
    pub min_iters: Option<u64>,
    pub max_iters: Option<u64>,
    pub min_sample_s: Option<f64>,
}

impl SweepFile {
    pub fn read(path: &Path) -> Result<SweepFile, SweepError> {
        let err = |message: String| SweepError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    }

    /// The variants list: strings as on the command line, or tables with a `name`.
    pub fn variant_specs(&self) -> Result<Option<Vec<VariantSpec>>, SweepError> {
        let Some(list) = &self.variants else {
            return Ok(None);
        };
        list.iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.parse()?),
                toml::Value::Table(t) => {
                    let mut params = serde_json::to_value(t)
                        .map_err(|e| field("variants", e.to_string()))?
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    let name = params
                        .remove("name")
                        .and_then(|n| n.as_str().map(str::to_string))
                        .ok_or_else(|| field("variants", "a table entry needs `name = \"...\"`"))?;
                    Ok(VariantSpec { name, params })
                }
                other => Err(field(
                    "variants",
                    format!("expected a string or a table, got {other}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// The most rounds a sweep visits its cases (beyond it an interval narrows no further
/// than the machine's drift over the run).
pub const MAX_ROUNDS: u32 = 100;

/// Everything a sweep varies, resolved from defaults, a file and flags.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub variants: Vec<VariantSpec>,
    pub seq: Vec<i64>,
    pub batch: Vec<i64>,
    pub heads: Vec<i64>,
    pub head_dim: Vec<i64>,
    pub dtype: Vec<Dtype>,
    pub device: Vec<String>,
    pub mode: Vec<Mode>,
    pub scope: Vec<Scope>,
    pub causal: Vec<bool>,
    pub timing: TimingConfig,
    pub timeout_s: f64,
    /// LibTorch intra-op threads; 0 keeps LibTorch's default (the physical cores).
    pub threads: i64,
    /// Which devices get the roofline's peaks measured before the cases.
    pub roofline: RooflineMode,
    /// Run cases whose estimated working memory exceeds their device's memory (refused
    /// up front otherwise, [`crate::estimate`]).
    pub allow_oversize: bool,
    /// Visits per case, interleaved (`--rounds`): each round visits every case in a
    /// different order, each visit in its own worker; 1 measures each case once.
    pub rounds: u32,
}

impl Default for Sweep {
    /// The quick default: the first five variants on the CPU, N = 256..2048.
    fn default() -> Self {
        Sweep {
            variants: ["vanilla", "sdpa", "local", "linformer", "performer"]
                .iter()
                .map(|n| VariantSpec::new(n))
                .collect(),
            seq: vec![256, 512, 1024, 2048],
            batch: vec![2],
            heads: vec![8],
            head_dim: vec![64],
            dtype: vec![Dtype::F32],
            device: vec!["cpu".into()],
            mode: vec![Mode::Forward],
            scope: vec![Scope::Attention],
            causal: vec![false],
            timing: TimingConfig::default(),
            timeout_s: 600.0,
            threads: 0,
            roofline: RooflineMode::Auto,
            allow_oversize: false,
            rounds: 1,
        }
    }
}

impl Sweep {
    /// Lays a sweep file over the defaults.
    pub fn apply_file(&mut self, file: SweepFile) -> Result<(), SweepError> {
        if let Some(v) = file.variant_specs()? {
            self.variants = v;
        }
        macro_rules! take {
            ($($f:ident),*) => {$( if let Some(v) = file.$f { self.$f = v; } )*};
        }
        take!(seq, batch, heads, head_dim, dtype, device, mode, scope, causal);
        if let Some(t) = file.timing {
            let c = &mut self.timing;
            c.warmup_s = t.warmup_s.unwrap_or(c.warmup_s);
            c.warmup_iters = t.warmup_iters.unwrap_or(c.warmup_iters);
            c.min_time_s = t.min_time_s.unwrap_or(c.min_time_s);
            c.min_iters = t.min_iters.unwrap_or(c.min_iters);
            c.max_iters = t.max_iters.unwrap_or(c.max_iters);
            c.min_sample_s = t.min_sample_s.or(c.min_sample_s);
        }
        if let Some(t) = file.timeout_s {
            self.timeout_s = t;
        }
        if let Some(t) = file.threads {
            self.threads = t;
        }
        if let Some(r) = file.roofline {
            self.roofline = r;
        }
        if let Some(a) = file.allow_oversize {
            self.allow_oversize = a;
        }
        if let Some(r) = file.rounds {
            self.rounds = r;
        }
        Ok(())
    }

    fn check_lists(&self) -> Result<(), SweepError> {
        let sizes: [(&'static str, &Vec<i64>); 4] = [
            ("seq", &self.seq),
            ("batch", &self.batch),
            ("heads", &self.heads),
            ("head_dim", &self.head_dim),
        ];
        for (name, list) in sizes {
            if list.is_empty() {
                return Err(field(name, "is empty"));
            }
            if let Some(bad) = list.iter().find(|&&v| v < 1) {
                return Err(field(name, format!("must be positive, got {bad}")));
            }
        }
        let empty = [
            ("variants", self.variants.is_empty()),
            ("dtype", self.dtype.is_empty()),
            ("device", self.device.is_empty()),
            ("mode", self.mode.is_empty()),
            ("scope", self.scope.is_empty()),
            ("causal", self.causal.is_empty()),
        ];
        if let Some((name, _)) = empty.iter().find(|(_, e)| *e) {
            return Err(field(name, "is empty"));
        }
        let t = &self.timing;
        let valid = |s: f64| s.is_finite() && (0.0..=MAX_SECONDS).contains(&s);
        if !valid(t.min_time_s) || !valid(t.warmup_s) || !t.min_sample_s.is_none_or(valid) {
            return Err(field(
                "timing",
                format!("times must be finite, non-negative and at most {MAX_SECONDS} s (a week)"),
            ));
        }
        if t.min_iters < 1 || t.max_iters < t.min_iters {
            return Err(field(
                "timing",
                format!(
                    "need 1 <= min_iters <= max_iters, got {} and {}",
                    t.min_iters, t.max_iters
                ),
            ));
        }
        // Written so that NaN is rejected too.
        if !(self.timeout_s > 0.0 && self.timeout_s <= MAX_SECONDS) {
            return Err(field(
                "timeout",
                format!(
                    "must be finite, above 0 and at most {MAX_SECONDS} s (a week), got {}",
                    self.timeout_s
                ),
            ));
        }
        check_threads(self.threads).map_err(|m| field("threads", m))?;
        if !(1..=MAX_ROUNDS).contains(&self.rounds) {
            return Err(field(
                "rounds",
                format!("must be 1 to {MAX_ROUNDS}, got {}", self.rounds),
            ));
        }
        Ok(())
    }

    /// Every case of the sweep, checked, without duplicates, smallest lengths first.
    pub fn cases(&self) -> Result<Vec<Case>, SweepError> {
        self.check_lists()?;
        let devices: Vec<String> = self
            .device
            .iter()
            .map(|d| normalise_device(d))
            .collect::<Result<_, _>>()?;
        let variants: Vec<VariantSpec> = self
            .variants
            .iter()
            .map(|v| v.normalized())
            .collect::<Result<_, _>>()?;
        let mut seen = HashSet::new();
        let mut cases = Vec::new();
        // The sequence length and the variant vary fastest, so a table fills row by row.
        let settings = iproduct!(
            &devices,
            &self.dtype,
            &self.mode,
            &self.scope,
            &self.causal,
            &self.batch,
            &self.heads,
            &self.head_dim,
            &self.seq,
            &variants
        );
        for (device, &dtype, &mode, &scope, &causal, &batch, &heads, &head_dim, &seq_len, spec) in
            settings
        {
            let key = CaseKey {
                variant: spec.name.clone(),
                params: spec.params.clone(),
                seq_len,
                batch,
                heads,
                head_dim,
                causal,
                dtype,
                device: device.clone(),
                mode,
                scope,
            };
            let case = Case::new(key, spec)?;
            if seen.insert(case.id.clone()) {
                cases.push(case);
            }
        }
        Ok(cases)
    }
}

/// The longest time a setting may name: a week, in seconds. Beyond it a timeout is a typo
/// (and past about 10^19 s it cannot be a `Duration` at all).
pub const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// One case: its key, its id and what is needed to build and describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub id: String,
    pub key: CaseKey,
    pub label: String,
    pub claims: Claims,
}

impl Case {
    fn new(key: CaseKey, spec: &VariantSpec) -> Result<Case, SweepError> {
        let entry = find(&spec.name)?;
        let info = &entry.info;
        let claims = info.claims(key.mode);
        let case = Case {
            id: key.id(),
            label: spec.label(),
            claims,
            key,
        };
        let invalid = |error| SweepError::Case {
            case: case.describe(),
            error,
        };
        // Before the variant's own checks, whose arithmetic on the sizes could overflow.
        crate::estimate::check_sizes(&case.key)
            .map_err(|m| invalid(VariantError::config(&spec.name, m)))?;
        entry
            .check(
                &serde_json::Value::Object(spec.params.clone()),
                &case.shape(),
            )
            .map_err(invalid)?;
        entry.check_scope(case.key.scope).map_err(invalid)?;
        if case.key.mode == Mode::Decode {
            if entry.info.decode.is_none() {
                return Err(invalid(VariantError::config(
                    &spec.name,
                    "it has no token-by-token decoder (`xarena list` shows which do)",
                )));
            }
            if !case.key.causal {
                return Err(invalid(VariantError::config(
                    &spec.name,
                    "decode mode generates causally: set causal = [true] (--causal)",
                )));
            }
        }
        Ok(case)
    }

    pub fn shape(&self) -> Shape {
        let k = &self.key;
        Shape {
            batch: k.batch,
            seq_len: k.seq_len,
            heads: k.heads,
            head_dim: k.head_dim,
            causal: k.causal,
        }
    }

    /// A one-line name for progress and errors.
    pub fn describe(&self) -> String {
        self.key.describe(&self.label)
    }
}

/// `--shard i/n`: the i-th of n slices of a sweep, for running one sweep on several
/// machines (a job array) and merging the results (`xarena merge`).
///
/// The cases are ranked by case id (a hash of the key) and shard i takes ranks i, i + n,
/// i + 2n, ...: the slices partition the sweep, differ in size by at most one case, mix
/// variants and lengths (ids are hashes, so no shard gets all the long cases), and depend
/// only on the sweep, not on the machine or the order of flags. Within a shard, cases
/// keep the sweep's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected i/n, e.g. 0/4 (shard i of n, from 0)"))?;
        let number = |what: &str, v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{s}`: the {what} `{v}` is not a whole number >= 0"))
        };
        let (index, count) = (number("index", i)?, number("count", n)?);
        if count == 0 {
            return Err(format!("`{s}`: the count must be at least 1"));
        }
        if index >= count {
            return Err(format!(
                "`{s}`: the index must be below the count (shards are 0 to {})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's cases, in the sweep's order.
    pub fn select(&self, cases: Vec<Case>) -> Vec<Case> {
        let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        let mine: HashSet<String> = ids
            .iter()
            .enumerate()
            .filter(|(rank, _)| *rank as u64 % self.count == self.index)
            .map(|(_, id)| id.to_string())
            .collect();
        cases.into_iter().filter(|c| mine.contains(&c.id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_files_set_the_roofline() {
        let mut sweep = Sweep::default();
        assert_eq!(sweep.roofline, RooflineMode::Auto);
        sweep
            .apply_file(toml::from_str("roofline = \"on\"").unwrap())
            .unwrap();
        assert_eq!(sweep.roofline, RooflineMode::On);
        let bad = toml::from_str::<SweepFile>("roofline = \"sometimes\"").unwrap_err();
        assert!(bad.to_string().contains("sometimes"), "{bad}");
    }

    #[test]
    fn shards_parse_and_refuse_what_is_not_a_shard() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        assert_eq!("0/1".parse::<Shard>(), Ok(Shard { index: 0, count: 1 }));
        for (bad, needle) in [
            ("3/3", "below the count"),
            ("0/0", "at least 1"),
            ("-1/2", "index `-1`"),
            ("1", "expected i/n"),
            ("a/2", "index `a`"),
            ("1/b", "count `b`"),
        ] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn shards_partition_the_sweep_evenly() {
        let sweep = Sweep {
            variants: ["empty", "vanilla", "local"]
                .iter()
                .map(|n| VariantSpec::new(n))
                .collect(),
            seq: vec![16, 32, 64, 128, 256],
            ..Sweep::default()
        };
        let all = sweep.cases().unwrap();
        assert_eq!(all.len(), 15);
        for n in 1..=16 {
            let mut seen = Vec::new();
            for i in 0..n {
                let part = Shard { index: i, count: n }.select(all.clone());
                // Sizes differ by at most one.
                let size = part.len() as u64;
                assert!(size == 15 / n || size == 15 / n + 1, "{i}/{n}: {size}");
                // The sweep's order is kept.
                let positions: Vec<usize> = part
                    .iter()
                    .map(|c| all.iter().position(|a| a.id == c.id).unwrap())
                    .collect();
                assert!(positions.windows(2).all(|w| w[0] < w[1]));
                seen.extend(part.into_iter().map(|c| c.id));
            }
            seen.sort();
            let mut ids: Vec<String> = all.iter().map(|c| c.id.clone()).collect();
            ids.sort();
            assert_eq!(seen, ids, "{n} shards cover the sweep once");
        }
        // The order of the flags does not move a case to another shard.
        let reversed = Sweep {
            variants: sweep.variants.iter().rev().cloned().collect(),
            seq: sweep.seq.iter().rev().copied().collect(),
            ..sweep.clone()
        };
        let shard = Shard { index: 1, count: 4 };
        let mut a: Vec<String> = shard.select(all).into_iter().map(|c| c.id).collect();
        let mut b: Vec<String> = shard
            .select(reversed.cases().unwrap())
            .into_iter()
            .map(|c| c.id)
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}
